"""focalsam.losses"""
